"""The train_dflash wrapper: legacy flags, translation to SpecForge's unified config, launch.

``args`` (flag table), ``legacy_args`` (objective flags for a legacy checkout's own parser, used
by ``patches/``), ``translate`` (flags -> unified YAML), ``launch`` (runtimes), ``cli``.
"""
