"""Data: TFDS builders and names, local files, and tf.data pipelines."""
