"""Local-cluster tooling: embedded redis-server, Sentinel and etcd launchers, our child
processes, local checkpoints, and a whole cluster on one machine."""
