"""Versioned weight snapshots (local flash and S3), verified on load.

- manifest.py: Manifest (files by sha256 + size, config, lineage), ed25519 sign/verify, keys.
- local_flash.py: a node's cache, versions/<id> written atomically, CURRENT, verify,
  quarantine, load_current.
- blobstore.py: the narrow blob store interface and open_blobstore(url); backends in
  local_blobstore.py (file://) and s3_blobstore.py (s3://, the only boto3 importer).
- remote.py: push (content-addressed blobs, manifest last), promote/rollback (conditional
  write of CURRENT), pull (verified before it becomes visible).
- gc.py: keep the N newest and every pinned version.

Weights are opaque bytes here: nothing in this package unpickles or imports torch.
"""
