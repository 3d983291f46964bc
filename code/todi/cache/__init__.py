"""The teacher cache: its format, build (``code/cache_teacher.py``) and reader."""
