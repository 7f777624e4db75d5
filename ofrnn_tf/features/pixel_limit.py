"""The limit on the pixels an image may declare, which every reader of image bytes applies
(the served graph's checks, `Predictor`, ``ofrnn-serve``) and the commands' flags set.
Free of TensorFlow, so that a command shows its flags and refuses wrong ones at once."""

# Decoding plus the antialiased resize (which reads the uint8 pixels and writes float32
# at the output size only) adds about 3.5 bytes per source pixel to the peak memory
# (benchmarks/bench_decode_memory.py): 40 million pixels is about 140 MB for one image.
# That admits 24 MP camera and 12 MP phone pictures with room to spare.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

# In every refusal for the pixel limit: the header checks', the served graph's and
# ofrnn-serve's; the commands look for it to add which flag raises the limit.
PIXEL_LIMIT_WORDS = "above the limit of"
