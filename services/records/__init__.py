"""Records as the repository has them: which record (version) holds which image, and takedowns.

An image is unique bytes; a record (with a version) holds many images and an image may sit in many
records (``image_records``). Deleting a record removes its links; an image no record holds any more
is erased with its rows and blobs. Every deletion leaves a row in ``deletions`` (who, when, what).
"""
