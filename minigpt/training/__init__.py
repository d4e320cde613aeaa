"""Training: the loop and everything it needs (the book's chapter 5 and appendix D).

    loop.py          train(): evaluate, step, checkpoint, sample; TrainSettings
    optim.py         AdamW, the learning-rate schedule, gradient clipping
    data.py          sliding windows over token ids, the seeded DataLoader, the train/val split
    classification_data.py  labelled texts (the SMS Spam Collection, CSV/TSV/JSONL): chapter 6's splits
    checkpoint.py    checkpoints (safetensors + JSON) that resume bit for bit
    kernel_cache.py  compiles every kernel in a child process first, so training runs cached code
"""
