"""Algorithm 1 of the paper: stage 1 trains M_map, stage 2 the decoder, under tf.distribute."""
