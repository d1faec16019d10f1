//! The netns test bed.
