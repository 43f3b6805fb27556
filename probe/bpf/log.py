"""The probe's messages: to the handler the CLI installs, else to the standard `logging` module.

The CLI writes straight to stderr so that a start does not pay for importing `logging`; code that
imports the probe as a library gets its messages on the "kubenetprobe" logger as usual.
"""
DEBUG, INFO, WARNING = 10, 20, 30  # logging's level numbers

_handler = None
_threshold = INFO


def use_handler(handler, threshold=INFO):
    """Send messages at or above `threshold` to handler(level, text) instead of `logging`."""
    global _handler, _threshold
    _handler, _threshold = handler, threshold


def message(level, fmt, *args):
    """Log fmt % args at `level`."""
    if _handler is None:
        import logging
        logging.getLogger("kubenetprobe").log(level, fmt, *args)
    elif level >= _threshold:
        _handler(level, fmt % args if args else fmt)


def debug(fmt, *args):
    message(DEBUG, fmt, *args)


def info(fmt, *args):
    message(INFO, fmt, *args)


def warning(fmt, *args):
    message(WARNING, fmt, *args)
