"""What both servers share: settings, the gRPC server (health, reflection), the ops HTTP port,
metrics, the ready file, and where a process's weights come from."""
