"""Where cameras come from: camvoice's own database (local) and camera clouds (ezviz).

Each backend implements camvoice.cameras.Backend; the composition root registers them.
"""
