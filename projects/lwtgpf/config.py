"""Config keys that LWTGPF adds to fast-reid's defaults."""
from fastreid.config import CfgNode as CN


def add_lwtgpf_config(cfg: CN) -> CN:
    """Add every LWTGPF key to a fast-reid config, in place, and return it."""
    _C = cfg

    # ---------------- LewinViT backbone ----------------
    # fast-reid's own keys are reused: SIE_COE (camera-embedding scale), DROP_PATH_RATIO,
    # PRETRAIN / PRETRAIN_PATH (local weights file).
    _C.MODEL.BACKBONE.LEWINVIT = CN()
    _C.MODEL.BACKBONE.LEWINVIT.SIZE = "tiny"  # tiny | small | base (METHOD.md section 1)
    _C.MODEL.BACKBONE.LEWINVIT.EMBED_DIM = 0  # > 0 overrides the size's stage-1 width
    _C.MODEL.BACKBONE.LEWINVIT.DEPTHS = []  # non-empty overrides the size's blocks per stage (4 values)
    _C.MODEL.BACKBONE.LEWINVIT.NUM_HEADS = []  # non-empty overrides the size's heads per stage (4 values)
    _C.MODEL.BACKBONE.LEWINVIT.PATCH_SIZE = 4  # patch embedding stride
    _C.MODEL.BACKBONE.LEWINVIT.WINDOW_SIZE = 7  # attention window (tokens per side), the same in every stage
    _C.MODEL.BACKBONE.LEWINVIT.MLP_RATIO = 4.0  # feed-forward hidden width / block width
    _C.MODEL.BACKBONE.LEWINVIT.LOCAL_ENHANCE = True  # 3x3 depthwise branch in every feed-forward network
    _C.MODEL.BACKBONE.LEWINVIT.FINAL_NORM = False  # LayerNorm after the last stage's blocks (the original has none)
    _C.MODEL.BACKBONE.LEWINVIT.PRETRAIN_FORMAT = "auto"  # auto | solider (mmcls names: SOLIDER, SOLIDER-REID, LWTGPF) | timm
    _C.MODEL.BACKBONE.NUM_CAMERAS = 0  # SIE camera embeddings (0: no camera embedding)
    _C.MODEL.BACKBONE.NUM_VIEWS = 0  # SIE view embeddings (0: none; with cameras, one row per camera-view pair)

    # ---------------- TransReID ViT (TMGF's backbone; also reads the fast-reid keys above) ----------------
    _C.MODEL.BACKBONE.VIT = CN()
    _C.MODEL.BACKBONE.VIT.EMBED_DIM = 384  # token width (ViT-S)
    _C.MODEL.BACKBONE.VIT.DEPTH = 12  # blocks; the last one (and the final norm) is the last stage
    _C.MODEL.BACKBONE.VIT.NUM_HEADS = 6  # attention heads
    _C.MODEL.BACKBONE.VIT.PATCH_SIZE = 16  # side of the non-overlapping patches, in pixels
    _C.MODEL.BACKBONE.VIT.MLP_RATIO = 4.0  # feed-forward hidden width / token width
    _C.MODEL.BACKBONE.VIT.STEM_CONV = False  # TransReID-SSL's IBN convolutional stem (its "ics" checkpoints)
    _C.MODEL.BACKBONE.VIT.PRETRAIN_HW_RATIO = 2  # height / width of the pretrained file's position grid

    # ---------------- Global-part head ----------------
    _C.MODEL.HEADS.PART_GRANULARITIES = [2, 3]  # horizontal stripes of branch 1, branch 2
    _C.MODEL.HEADS.GLOBAL_FEAT = "mean"  # mean | b1 | b2: which branch gives the global feature
    _C.MODEL.HEADS.EVAL_FEAT = "global"  # global | global_parts: retrieval feature at test time

    # ---------------- Camera-aware proxy memory (METHOD.md section 4) ----------------
    _C.MODEL.MEMORY = CN()
    _C.MODEL.MEMORY.TEMP = 0.07  # tau
    _C.MODEL.MEMORY.MOMENTUM = 0.2  # alpha: weight of the old proxy in the update
    _C.MODEL.MEMORY.NEG_K = 50  # hard negative proxies per sample
    _C.MODEL.MEMORY.POS_K = 3  # online positives (best proxy of the best cameras)
    _C.MODEL.MEMORY.BALANCE_W = 0.15  # beta: weight of sample-proxy vs proxy-proxy similarity
    _C.MODEL.MEMORY.PART_WEIGHT = 0.1  # lambda: weight of the part losses

    # ---------------- Pseudo labels, once per epoch (METHOD.md section 3) ----------------
    _C.CLUSTER = CN()
    _C.CLUSTER.EPS = 0.5  # DBSCAN radius on the Jaccard distance
    _C.CLUSTER.MIN_SAMPLES = 4  # DBSCAN core-point neighbourhood size
    _C.CLUSTER.K1 = 20  # k-reciprocal neighbourhood
    _C.CLUSTER.K2 = 6  # query-expansion neighbourhood
    _C.CLUSTER.KNN = "auto"  # auto | faiss | torch (exact) | approx (inverted file): nearest-neighbour search
    _C.CLUSTER.KNN_FP16 = False  # faiss on a GPU keeps the features in float16 (candidates re-ranked in float64)
    _C.CLUSTER.APPROX = CN()
    _C.CLUSTER.APPROX.NLIST = 0  # k-means cells of the approx search (0: round(sqrt(N)), at most N / 64)
    _C.CLUSTER.APPROX.MAX_CELL = 4.0  # cells above this many times the mean size are split (0: never)
    _C.CLUSTER.APPROX.NPROBE = 32  # cells scanned per query (0: as many as TARGET_RECALL needs)
    # NPROBE 0: the share of the k-reciprocal neighbour pairs of sampled rows that the search must find
    _C.CLUSTER.APPROX.TARGET_RECALL = 0.95
    _C.CLUSTER.APPROX.MAX_SCAN = 0.25  # NPROBE 0: when the target needs a larger share of rows per query, search exactly
    _C.CLUSTER.APPROX.PRECISION = "auto"  # auto | bfloat16 | float32: the scan's products (auto: bfloat16 where native)
    _C.CLUSTER.APPROX.RECALL_SAMPLE = 1000  # rows that choose NPROBE, and (others) whose final recall@K1 is logged
    _C.CLUSTER.APPROX.SEED = 0  # seed of the k-means sample and initialisation
    _C.CLUSTER.PART_DTYPE = "float32"  # float32 | float16: part features kept until the epoch's proxies exist
    # Addition beyond the original: features normalised per camera before clustering
    _C.CLUSTER.CAMERA_NORM = "none"  # none (published) | center | standardize (lwtgpf/camera_norm.py)
    # Camera-aware Jaccard distance (CA-Jaccard, CVPR 2024; docs/METHOD.md section 9), an addition: off in the original
    _C.CLUSTER.CAMERA_JACCARD = CN()
    _C.CLUSTER.CAMERA_JACCARD.ENABLED = False
    _C.CLUSTER.CAMERA_JACCARD.K1_INTRA = 5  # k-reciprocal neighbours among the image's own camera
    _C.CLUSTER.CAMERA_JACCARD.K1_INTER = 20  # ... and among the other cameras
    _C.CLUSTER.CAMERA_JACCARD.K2_INTRA = 2  # query expansion: own-camera neighbours (the image itself first)
    _C.CLUSTER.CAMERA_JACCARD.K2_INTER = 4  # ... and other-camera neighbours
    _C.CLUSTER.EMBEDDING_PERIOD = 0  # epochs between TensorBoard projector embeddings of training features (0: off)
    _C.CLUSTER.EMBEDDING_SAMPLES = 1000  # training images (a fixed random sample) in each embedding

    # ---------------- Analysis: tools/visualize.py and TensorBoard pictures ----------------
    _C.ANALYSIS = CN()
    _C.ANALYSIS.HEATMAP_METHOD = "auto"  # rollout | gradcam | gradcam++ | ... (auto: rollout on LewinViT, else gradcam)
    _C.ANALYSIS.CAM_LAYER = ""  # module name the CAM methods explain ("": the last stage of the trunk)
    _C.ANALYSIS.ROLLOUT = CN()
    _C.ANALYSIS.ROLLOUT.HEAD_FUSION = "mean"  # mean | max | min: how a block's heads are fused
    _C.ANALYSIS.ROLLOUT.DISCARD_RATIO = 0.0  # share of each block's smallest attention weights set to 0
    _C.ANALYSIS.TOPK = 10  # gallery images in a rank list
    _C.ANALYSIS.TB_RANKLISTS = 4  # rank lists put in TensorBoard at each evaluation (0: none)
    _C.ANALYSIS.TB_HEATMAPS = 4  # query heat maps put in TensorBoard at each evaluation (0: none)

    # ---------------- Solver / data ----------------
    _C.SEED = -1  # seed of python, numpy and torch RNGs (>= 0: reproducible runs; < 0: a fresh one)
    _C.SOLVER.ITERS_PER_EPOCH = 200  # iterations per epoch (0: one pass over the training set)
    _C.SOLVER.WARMUP_EPOCHS = 10  # linear warm-up from SOLVER.WARMUP_FACTOR x BASE_LR, epoch-wise
    _C.SOLVER.LOG_PERIOD = 20  # iterations between console / metrics.json / TensorBoard writes
    _C.INPUT.GRAY_WORLD = False  # grey-world white balance of every image, train and test (not in the original)
    _C.INPUT.CHANNEL_GAIN = CN()  # white-balance jitter in training (lwtgpf/data/transforms.py; not in the original)
    _C.INPUT.CHANNEL_GAIN.ENABLED = False
    _C.INPUT.CHANNEL_GAIN.PROB = 0.5  # share of training images jittered
    _C.INPUT.CHANNEL_GAIN.MAX_LOG = 0.5  # each channel's gain is exp(u), u uniform in [-MAX_LOG, MAX_LOG]
    _C.DATASETS.CUSTOM_DIR = ""  # folder in Market-1501 layout, read by the MarketLayout dataset
    _C.DATASETS.CUHK03_VARIANT = "labeled"  # labeled | detected (CUHK03NP)
    _C.DATASETS.SYNTHETIC = CN()
    _C.DATASETS.SYNTHETIC.NUM_CAMERAS = 6
    _C.DATASETS.SYNTHETIC.NUM_TRAIN_IDS = 200
    _C.DATASETS.SYNTHETIC.NUM_TEST_IDS = 100
    _C.DATASETS.SYNTHETIC.IMAGES_PER_ID = 20  # training images per identity, on average
    _C.DATASETS.SYNTHETIC.OCCLUDED = False  # put occluders on query images
    _C.DATASETS.SYNTHETIC.SEED = 0
    # Camera-bias strengths (defaults: the demo's set; docs/BENCHMARKS.md sweeps them)
    _C.DATASETS.SYNTHETIC.COLOUR_CAST = 1.0  # exponent on each camera's per-channel gains, whole image (0: none)
    _C.DATASETS.SYNTHETIC.BACKGROUND_CONTRAST = 0.15  # contrast left to each camera's scenery (1: full)
    _C.DATASETS.SYNTHETIC.BLUR_NOISE = 1.0  # factor on each camera's blur sigma and noise std
    # Kinds of camera bias that are off (0) by default; lwtgpf/data/synthetic.py BIAS_DEFAULTS says what 1 means
    _C.DATASETS.SYNTHETIC.VIEW_BIAS = 0.0  # chance that an image shows its camera's preferred view (front/back/side)
    _C.DATASETS.SYNTHETIC.SCALE_BIAS = 0.0  # each camera's person scale and position (0 to 1)
    _C.DATASETS.SYNTHETIC.LOW_RESOLUTION = 0.0  # each camera downsamples by 1 + this x (1 to 3) (0 to 4)
    _C.DATASETS.SYNTHETIC.CAMERA_OCCLUDERS = 0.0  # chance of each camera's own occluder in front of the legs (0 to 1)
    _C.DATASETS.SYNTHETIC.COLOUR_RESPONSE = 0.0  # each camera's channel gammas, hue and saturation (0 to 3)
    # The pretraining population (lwtgpf/data/population.py; tools/pretrain.py), disjoint from every SyntheticReID set
    _C.DATASETS.POPULATION = CN()
    _C.DATASETS.POPULATION.NUM_IDS = 2400  # people of its training split
    _C.DATASETS.POPULATION.NUM_TEST_IDS = 100  # other people, in its query / gallery (monitoring only)
    _C.DATASETS.POPULATION.NUM_CAMERAS = 36  # camera styles, each with bias strengths drawn at random
    _C.DATASETS.POPULATION.IMAGES_PER_ID = 8
    _C.DATASETS.POPULATION.SEED = 0

    # ---------------- Reliability: loading, resume, input checks ----------------
    _C.MODEL.WEIGHTS_PARTIAL = False  # True: a checkpoint that does not fit loads what fits, with a warning (default: stop)
    _C.SOLVER.CHECKPOINT_ITERS = 0  # also save model_last every N iterations inside epochs (0: at epoch ends only)
    _C.DATALOADER.CHECK_IMAGES = True  # open every image header of every split before training
    _C.DATALOADER.SKIP_UNREADABLE = False  # True: leave unreadable images out with a warning (default: stop)
    _C.CLUSTER.MAX_CLUSTER_FRACTION = 0.5  # warn when one cluster holds more than this fraction of the samples
    return cfg
