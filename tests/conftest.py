"Headless plotting and a small, fixed thread count so that notebook tests are repeatable on a 2-core CI machine"
import os
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('OMP_NUM_THREADS', '2')
