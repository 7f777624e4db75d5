"""Pictures people would rather look at than numbers: attention maps (paper Fig. 3)."""
