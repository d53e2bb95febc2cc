"""The differentiable architecture search (FBNet, sections 3-4): settings, the Gumbel-softmax super net, the
trainer, decoding an architecture under a budget, outputs, and retraining. Uses every layer below it."""
