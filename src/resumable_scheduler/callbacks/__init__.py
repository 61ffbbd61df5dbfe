"""Drop-in, resumable replacements for Keras callbacks."""
