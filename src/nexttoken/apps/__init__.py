"""What the command line and the benchmarks run on top of the model: chat, translation, text to text
with an encoder-decoder, the speed bench, and the views that show what decoding and attention did."""
