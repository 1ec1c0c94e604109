"""Dataset plugins: local image data sets (no download at run time). Base: jepaflow.interfaces.Dataset."""
