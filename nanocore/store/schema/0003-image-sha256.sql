-- nanocore store, schema version 3: the SHA-256 of each image's recorded version.
-- Uploads are hashed with SHA-1 (Nano's check_sum, the Signature Cells verify) and SHA-256;
-- this keeps the second. Empty for images imported from Nano or recorded before.

ALTER TABLE media_image ADD COLUMN sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE disk_image ADD COLUMN sha256 TEXT NOT NULL DEFAULT '';
