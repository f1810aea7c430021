"""Files: direct-to-S3 uploads, their verification and lifecycle, safe downloads."""
