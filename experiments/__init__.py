"""One file per full run; each `get_config(arg=None)` returns its complete config."""
