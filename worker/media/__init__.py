"""Reading and writing pictures and films: photo formats and their metadata (images and the formats it hands on:
tiff, jpeg2000, iptc, icc, xmp, boxes), film frames as files (frame_sequences in, frame_sink out, cineon, openexr),
and video streams (video_source, video_sink, captions, segments)."""
