"""Looking inside a model: attention rollout, class-activation maps, rank lists, TensorBoard
pictures and embeddings, ONNX export."""
