"""MAC and parameter counts, checked against hand-computed products."""

import keras

from aimet_tf.graph.cost import LayerCost, layer_costs, total_cost


def test_layer_costs_by_hand():
    inputs = keras.Input((8, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)           # 8x6 out
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)        # 6x4 out, 8 ch
    x = keras.layers.SeparableConv2D(5, 3, name="sep")(x)                        # 4x2 out
    x = keras.layers.Conv2DTranspose(2, 2, strides=2, name="up")(x)              # reads 4x2
    x = keras.layers.Reshape((8 * 4, 2))(x)
    x = keras.layers.Dense(3, name="fc")(x)                                      # 32 rows
    model = keras.Model(inputs, x)
    costs = layer_costs(model)
    assert costs["conv"] == LayerCost(8 * 6 * 3 * 3 * 3 * 4, 3 * 3 * 3 * 4 + 4)
    assert costs["dw"].macs == 6 * 4 * 3 * 3 * 4 * 2
    assert costs["sep"].macs == 4 * 2 * (3 * 3 * 8 + 8 * 5)
    assert costs["up"].macs == 4 * 2 * 2 * 2 * 5 * 2
    assert costs["fc"] == LayerCost(32 * 2 * 3, 2 * 3 + 3)
    assert total_cost(model).params == model.count_params()


def test_shared_layer_counts_macs_per_call_and_params_once():
    dense = keras.layers.Dense(4, name="shared")
    a, b = keras.Input((5,)), keras.Input((5,))
    model = keras.Model([a, b], keras.layers.Add()([dense(a), dense(b)]))
    assert layer_costs(model)["shared"] == LayerCost(2 * 5 * 4, 5 * 4 + 4)
