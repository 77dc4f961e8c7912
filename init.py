"""``python init.py --model_dir DIR [--key VALUE ...]``: the end-to-end run from a clone, the same as
``triplet-keras train`` after ``pip install`` (triplet_keras.pipeline.train_command says what it does)."""
from triplet_keras.backend_choice import choose_backend
from triplet_keras.pipeline.train_command import main

if __name__ == "__main__":
    choose_backend()  # before keras is imported
    main()
