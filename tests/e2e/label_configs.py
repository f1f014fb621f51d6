"""Label configs of the end-to-end projects."""

from __future__ import annotations

LABELS = ("red disc", "blue square")

_LABEL_TAGS = "".join(f'<Label value="{label}"/>' for label in LABELS)

# Masks, polygons and boxes on one image (issue 8, path 1).
MASKS_POLYGONS_BOXES = f"""<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="brush" toName="image">{_LABEL_TAGS}</BrushLabels>
  <PolygonLabels name="polygon" toName="image">{_LABEL_TAGS}</PolygonLabels>
  <RectangleLabels name="box" toName="image">{_LABEL_TAGS}</RectangleLabels>
</View>"""

# Brush only, plus the smart tools an annotator uses for interactive pre-annotation: a free-text
# prompt and a keypoint.
INTERACTIVE = f"""<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="brush" toName="image">{_LABEL_TAGS}</BrushLabels>
  <KeyPointLabels name="keypoint" toName="image" smart="true">{_LABEL_TAGS}</KeyPointLabels>
  <TextArea name="prompt" toName="image" editable="true" maxSubmissions="1" placeholder="what to segment"/>
</View>"""

BRUSH_ONLY = f"""<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">{_LABEL_TAGS}</BrushLabels>
</View>"""
