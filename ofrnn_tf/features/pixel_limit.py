"""The limit on the pixels an image may declare, which every reader of image bytes applies
(the served graph's checks, `Predictor`, ``ofrnn-serve``) and the commands' flags set.
Free of TensorFlow, so that a command shows its flags and refuses wrong ones at once."""

# Decoding plus the antialiased resize (which works in float32) needs about
# 15 bytes per source pixel: 40 million pixels is about 600 MB for one image.
# That admits 24 MP camera and 12 MP phone pictures with room to spare.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

# In every refusal for the pixel limit: the header checks', the served graph's and
# ofrnn-serve's; the commands look for it to add which flag raises the limit.
PIXEL_LIMIT_WORDS = "above the limit of"
