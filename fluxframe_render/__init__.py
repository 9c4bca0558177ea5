"""ff-render: match every frame of a video to a pool image and write the result."""
