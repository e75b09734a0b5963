"""The exit codes of every verb: README.md's table, checked verb by verb by tests/test_exit_codes.py."""

DONE = 0
FAILED = 1  # a check failed (`maskrt check`, `maskrt demo`, `maskrt doctor`), or an internal error of maskrt
BAD_INPUT = 2  # a file, flag or input that cannot be used, or nothing usable given
NO_TENSORRT = 3  # everything that could be done without them is done; TensorRT, its builder or a GPU is missing here
INTERRUPTED = 130  # SIGINT (Ctrl-C): what was complete is kept and said, temporary files are removed
TERMINATED = 143  # SIGTERM: as for Ctrl-C
