"""A folder of images into a saved Predictor's gallery, streamed, resumable after a kill.

The folder holds one subfolder per class (named as a class of the predictor), images in any depth
below it, as for training (triplet_keras.data.datasets.scan_classes). Each image's gallery id is its real
absolute path. Images are read, embedded and written ``chunk_size`` at a time as ``chunk-<n>.npz``
(embeddings, labels, ids) under ``<model_dir>/gallery_pending/``, each file atomically, so memory
holds one chunk of images and a kill loses at most the chunk in progress. A run skips the ids already
in the gallery or in a pending chunk, then merges the pending chunks into the gallery (items whose id
the gallery already holds are dropped), saves the predictor and removes the chunks: a run after a
kill at any point adds every image exactly once. Unreadable images are skipped and named in one
warning.
"""
import glob
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from shutil import rmtree

import numpy as np
from tqdm.auto import tqdm

from triplet_keras.core.export import atomic_write
from triplet_keras.core.images import read_image, resize_image
from triplet_keras.data.datasets import DatasetError, scan_classes
from .gallery import Gallery
from .predict import Predictor

PENDING_FOLDER = "gallery_pending"
CHUNK_SIZE = 1024
READ_WORKERS = 4


def folder_items(folder, class_names):
    """(ids, paths, labels) string arrays of the images below ``folder``'s class subfolders, ids their real paths;
    DatasetError for a subfolder that names no class in ``class_names`` or a folder without images."""
    classes = scan_classes(os.fspath(folder))
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise DatasetError(f"class folders {unknown[:5]} of {os.fspath(folder)!r} are not classes of the "
                           f"predictor {class_names}")
    paths = [path for files in classes.values() for path in files]
    if not paths:
        raise DatasetError(f"no images in class subfolders of {os.fspath(folder)!r}")
    labels = [name for name, files in classes.items() for _ in files]
    return np.array([os.path.realpath(path) for path in paths]), np.array(paths), np.array(labels)


def chunk_number(path):
    """n of a chunk file ``chunk-<n>.npz``."""
    return int(os.path.basename(path)[len("chunk-"):-len(".npz")])


def pending_chunks(model_dir):
    """The pending chunk files of ``model_dir``, in the order they were written."""
    return sorted(glob.glob(os.path.join(model_dir, PENDING_FOLDER, "chunk-*.npz")), key=chunk_number)


def read_chunk(path):
    with np.load(path, allow_pickle=False) as stored:
        return Gallery(*(stored[name] for name in Gallery._fields))


def read_images(paths, size, pool):
    """(the readable images, resized to ``size``, (n, H, W, 3) or None when none is, and a bool per
    path: readable)."""
    images = list(pool.map(lambda path: read_image(path, strict=False), paths))
    readable = np.array([image is not None for image in images], bool)
    kept = [resize_image(image, size) for image in images if image is not None]
    return (np.stack(kept) if kept else None), readable


def add_folder_to_gallery(model_dir, folder, batch_size=64, chunk_size=CHUNK_SIZE, progress=True):
    """Add the images below ``folder`` (module docstring) to the gallery of the predictor saved in
    ``model_dir`` and save it; returns (the number of items added, the gallery size)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    predictor = Predictor.load(model_dir, batch_size=batch_size)
    ids, paths, labels = folder_items(folder, predictor.class_names)
    done = set() if predictor.gallery is None else set(predictor.gallery.ids)
    chunks = pending_chunks(model_dir)
    for chunk in chunks:
        done.update(read_chunk(chunk).ids)
    todo = np.flatnonzero([item not in done for item in ids])
    number = chunk_number(chunks[-1]) + 1 if chunks else 0
    unreadable = []
    with ThreadPoolExecutor(READ_WORKERS) as pool, \
            tqdm(total=len(todo), desc="adding to the gallery", unit="image", disable=not progress) as bar:
        for start in range(0, len(todo), chunk_size):
            rows = todo[start:start + chunk_size]
            images, readable = read_images(paths[rows], predictor.image_size, pool)
            unreadable += paths[rows[~readable]].tolist()
            if readable.any():
                kept = rows[readable]
                chunk = {"embeddings": predictor.embed(images), "labels": labels[kept], "ids": ids[kept]}
                atomic_write(os.path.join(model_dir, PENDING_FOLDER, f"chunk-{number}.npz"),
                             lambda temporary: np.savez(temporary, **chunk))
                number += 1
            bar.update(len(rows))
    if unreadable:
        warnings.warn(f"{len(unreadable)} unreadable image file(s) under {os.fspath(folder)!r}, "
                      f"e.g. {unreadable[:3]}; skipped")
    return merge_pending(predictor, model_dir), len(predictor.gallery.ids) if predictor.gallery is not None else 0


def merge_pending(predictor, model_dir):
    """Add the pending chunks' items that the gallery does not hold yet, save the predictor, remove the
    chunks; returns the number of items added."""
    held = set() if predictor.gallery is None else set(predictor.gallery.ids)
    new_items = []
    for path in pending_chunks(model_dir):
        chunk = read_chunk(path)
        new = np.array([item not in held for item in chunk.ids], bool)
        new_items.append([array[new] for array in chunk])
    added = sum(len(ids) for _, _, ids in new_items)
    if added:
        predictor.add_gallery_embeddings(*(np.concatenate(arrays) for arrays in zip(*new_items)))
        predictor.save(model_dir)
    rmtree(os.path.join(model_dir, PENDING_FOLDER), ignore_errors=True)
    return added
