"""Using a trained model: features of new images, feature files, gallery search."""
