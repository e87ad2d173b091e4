"""The shapes world: a seeded synthetic vision-language dataset written in the official formats.

Images hold 2-6 shapes (circle, square, triangle, diamond, star, hexagon) with a colour and a size, placed
with limited occlusion. The same scenes give COCO instances and captions, Visual Genome objects, attributes,
relationships and regions, VQA v2 questions with 10 answers, NLVR2 statements over image pairs and a
Karpathy split, all correct by construction. See docs/data/shapes_world.md.

In memory::

    rng = random.Random(0)
    scene = sample_scene(rng)            # Scene(width, height, background, objects=(SceneObject, ...))
    image = render_scene(scene)          # PIL RGB image
    captions = describe(scene, rng)      # 5 true captions
    qas = ask(scene, rng)                # [QA(question, answer, family, answer_type, question_type), ...]
    statements = state(scene, sample_scene(rng), rng)   # [Statement(sentence, label, family), ...]

On disk::

    world = generate_shapes_world(num_images=2000, seed=0)   # cached under ~/.cache/vlpkit/shapes-<key>
    world.instances("train"), world.vqa_annotations("val"), world.nlvr2("dev"), world.karpathy, ...
"""

from vlpkit.data.shapes.geometry import BACKGROUNDS, PALETTE, SHAPES
from vlpkit.data.shapes.language import QA, Proposition, Statement, Vocab, ask, describe, propose, state
from vlpkit.data.shapes.render import render_scene
from vlpkit.data.shapes.scene import COLORS, SIZES, Scene, SceneConfig, SceneObject, sample_scene
from vlpkit.data.shapes.world import ShapesWorld, WorldConfig, default_cache_dir, generate_shapes_world

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "PALETTE",
    "QA",
    "SHAPES",
    "SIZES",
    "Proposition",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "ShapesWorld",
    "Statement",
    "Vocab",
    "WorldConfig",
    "ask",
    "default_cache_dir",
    "describe",
    "generate_shapes_world",
    "propose",
    "render_scene",
    "sample_scene",
    "state",
]
