"""Tests against real processes over real sockets: Redis, etcd, S3 (moto), shards, coordinators."""
