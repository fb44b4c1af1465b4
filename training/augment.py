"""Augmentation that fits microscopy, as a tf.data map: the dihedral group, small colour and scale jitter."""
from __future__ import annotations


def augment(image, seed_pair):
    """Randomly flip, rotate by 90-degree steps, jitter brightness/contrast/saturation/hue and scale."""
    import tensorflow as tf
    seeds = tf.random.experimental.stateless_split(seed_pair, 8)
    size = tf.shape(image)[0]
    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.stateless_random_flip_left_right(x, seeds[0])
    k = tf.random.stateless_uniform([], seeds[1], 0, 4, dtype=tf.int32)
    x = tf.image.rot90(x, k)
    x = tf.image.stateless_random_brightness(x, 0.06, seeds[2])
    x = tf.image.stateless_random_contrast(x, 0.9, 1.1, seeds[3])
    x = tf.image.stateless_random_saturation(x, 0.85, 1.15, seeds[4])
    x = tf.image.stateless_random_hue(x, 0.02, seeds[5])
    # Scale jitter: zoom in or out by up to 10 %, black outside the frame like the crop's padding.
    half = tf.random.stateless_uniform([], seeds[6], 0.45, 0.55)
    shift = tf.random.stateless_uniform([2], seeds[7], -0.04, 0.04)
    box = tf.stack([0.5 - half + shift[0], 0.5 - half + shift[1], 0.5 + half + shift[0], 0.5 + half + shift[1]])
    x = tf.image.crop_and_resize(x[None], box[None], [0], tf.stack([size, size]), extrapolation_value=0.0)[0]
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0
