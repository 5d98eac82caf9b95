"""Files on disk: atomic writes, the cache folder, images, PNG, videos and data set layouts."""
