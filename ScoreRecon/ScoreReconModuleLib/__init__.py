"""Module-side helpers of the ScoreRecon 3D Slicer module (no numerics; those live in ScoreReconLib).

- :mod:`.compat`: the minimum Slicer release and the check against the running one;
- :mod:`.settings`: constants, errors and :class:`~.settings.ScoreReconSettings` (one run's options → CLI arguments);
- :mod:`.dependencies`: the Python requirements of the reconstruction process, version checks, installation;
- :mod:`.process`: :class:`~.process.ScoreReconProcess`, the background child process runner;
- :mod:`.volumes`: volume nodes ↔ arrays and files, placing results in the scene (transform, subject hierarchy);
- :mod:`.jobs`: :class:`~.jobs.ScoreReconJob`, the non-blocking job (start / progress / cancel / result);
- :mod:`.sampledata`: the shipped samples in the Sample Data module.

Every file here must import on the Python of Slicer releases older than the minimum (3.9), so that
the module can tell the user to upgrade instead of failing to load: ``from __future__ import
annotations`` everywhere, no syntax newer than 3.9 (``Testing/test_slicer_grammar.py`` checks).
"""

from __future__ import annotations
