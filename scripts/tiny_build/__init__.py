"""Building the committed tiny models (``make tiny-models``); not part of the runtime.

``corpus`` is what the models read, ``train`` trains one model into a folder and
``quality`` measures it for ``build_info.json``. ``scripts/build_tiny_models.py`` drives
them; the runtime (``blue_cli.models.tiny``) only loads the folders they produce.
"""
