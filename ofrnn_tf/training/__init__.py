"""Algorithm 1 of the paper: stage 1 trains M_map, stage 2 the decoder, under tf.distribute;
and where a run's training stands, read from its run folder (`run_state`)."""
