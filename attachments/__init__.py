"""Files, order deliveries and moderation: each a sub-package with its model, service, store and REST."""
