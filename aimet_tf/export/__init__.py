"""aimet_tf.export."""
