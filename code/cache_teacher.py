"""One pass of the teacher over a training split into a teacher cache: ``torchrun ... code/cache_teacher.py --help``."""

from todi.cache_run import main

if __name__ == "__main__":
    main()
