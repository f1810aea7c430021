"""Order deliveries: files a seller delivers, settled by their scan, decided by the buyer."""
