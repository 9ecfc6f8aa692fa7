"""Small SUPERB data sets in the exact layouts of the real ones, spoken by espeak-ng.

One module per corpus; each writes a directory that s3prl 0.4.18's downstream
reads as it reads the real corpus, so that every task runs end to end here.
"""
