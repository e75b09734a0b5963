"""The serving defaults that the command line shows and the servers and writers use: one place for both, importing
nothing, so that `maskrt --help` loads no server."""

MODEL_NAME = "maskrt"  # the name clients ask Triton for
MAX_QUEUE_DELAY_US = 1000  # how long Triton's dynamic batcher holds a request to group it with others
SHUTDOWN_TIMEOUT_S = 5  # how long in-flight requests get on SIGTERM
MAX_IMAGE_PIXELS = 8192 * 8192  # larger images are refused before they are decoded
DEEPSTREAM_SINKS = ("file", "screen", "fake")
# deepstream-app's source when none is given: the sample video every DeepStream install has.
DEEPSTREAM_SOURCE = "file:///opt/nvidia/deepstream/deepstream/samples/streams/sample_1080p_h264.mp4"
