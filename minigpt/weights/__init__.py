"""Model weights in and out: Hugging Face checkpoints, OpenAI's TensorFlow files, downloads.

    pretrained.py     from_pretrained / save_pretrained / load_model: name mapping, strict loading
    download.py       GPT-2's files from the Hugging Face Hub (huggingface_hub), verified by sha256
    tf_checkpoint.py  reading OpenAI's original TensorFlow checkpoints (what the book downloads)
"""
