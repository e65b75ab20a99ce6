"""The principles from scratch (`lamina explain`): back-propagation written by hand in NumPy, and the
pipeline deep learning replaced (engineered features and a linear classifier), each on Fashion-MNIST."""
