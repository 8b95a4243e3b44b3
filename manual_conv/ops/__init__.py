"""One module per op family: the hand-written forward/backward of each layer as torch.autograd.Functions."""
