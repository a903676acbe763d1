"""An example third-party fxbench pass package (used by fxbench's tests)."""
