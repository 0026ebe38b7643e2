"""The bundled model: ZFNet28 trained on Fashion-MNIST, its data and checkpoints, and loading user models."""
