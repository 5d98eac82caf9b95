"""Training: configuration, data, the loop and the run folder it keeps."""
