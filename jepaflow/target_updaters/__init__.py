"""Target-updater plugins: update target networks from online ones. Base: jepaflow.interfaces.TargetUpdater."""
