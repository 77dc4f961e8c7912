"""What a download needs to know first: where Keras keeps its downloads, and whether a host answers.

Datasets (CIFAR-10, MNIST, Fashion-MNIST) and ImageNet weights are fetched into the Keras cache; each
loader checks the cache, then the host with a short TCP connect, so offline it fails at once with what
to do instead of waiting for a download to time out.
"""
import os
import socket


def keras_home():
    """Where Keras keeps downloads: $KERAS_HOME, else ~/.keras."""
    return os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))


def host_reachable(host, timeout=3.0):
    """Whether a TCP connection to (name, port) opens within ``timeout`` seconds."""
    try:
        socket.create_connection(host, timeout=timeout).close()
        return True
    except OSError:
        return False
