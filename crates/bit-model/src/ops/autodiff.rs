//! [`BitOps`] on an autodiff backend: the forward runs on the inner backend `B`, and one
//! backward step per operation computes its gradients in closed form with `B`'s own backward
//! primitives. Inputs are recorded through the checkpointer, so Burn's gradient checkpointing
//! strategies apply to these operations like to its own.

use burn::backend::AutodiffBackend;
use std::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::retro_forward::RetroForward;
use burn::backend::autodiff::checkpoint::state::BackwardStates;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;

use super::{
    BitOps, GroupNormOptions, GroupNormReluGrads, GroupNormReluOutput, PoolOptions, StdConvOptions,
};

#[derive(Debug)]
struct StdConv2dBackward;

impl<B: BitOps> Backward<B, 2> for StdConv2dBackward {
    type State = (NodeId, NodeId, StdConvOptions);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, weight_id, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_id);
        let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_id);
        let parents = ops.parents.map(|node| node.map(|n| n.id));
        conv_grads::<B>(parents, grads, x, weight, grad, options);
    }
}

/// The convolution's gradients as above; the residual's gradient is the output's.
#[derive(Debug)]
struct StdConv2dAddBackward;

impl<B: BitOps> Backward<B, 3> for StdConv2dAddBackward {
    type State = (NodeId, NodeId, StdConvOptions);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_residual] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, weight_id, options) = ops.state;
        if let Some(node) = node_residual {
            grads.register::<B>(node.id, grad.clone());
        }
        if node_x.is_none() && node_weight.is_none() {
            return;
        }
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_id);
        let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_id);
        let parents = [node_x.map(|n| n.id), node_weight.map(|n| n.id)];
        conv_grads::<B>(parents, grads, x, weight, grad, options);
    }
}

/// Registers the gradients of a standardized convolution for the parents that need them.
fn conv_grads<B: BitOps>(
    [node_x, node_weight]: [Option<NodeId>; 2],
    grads: &mut Gradients,
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    options: StdConvOptions,
) {
    if let Some(id) = node_x {
        let dx = B::std_conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options);
        grads.register::<B>(id, dx);
    }
    if let Some(id) = node_weight {
        let dw = B::std_conv2d_weight_backward(x, weight, grad, options);
        grads.register::<B>(id, dw);
    }
}

#[derive(Debug)]
struct ZeroPadMaxPool2dBackward;

impl<B: BitOps> Backward<B, 1> for ZeroPadMaxPool2dBackward {
    type State = (NodeId, PoolOptions);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, options) = ops.state;
        if let Some(node) = node_x {
            let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_id);
            let dx = B::zero_pad_max_pool2d_backward(x, grad, options);
            grads.register::<B>(node.id, dx);
        }
    }
}

#[derive(Debug)]
struct GroupNormReluBackward;

/// Recomputes `relu(group_norm(x))` in the backward where gradient checkpointing dropped it.
/// The op is memory-bound (two passes over its input), so under Burn's balanced strategy the
/// convolution after it keeps no copy of its input: about half of a bottleneck's activations.
/// Without checkpointing Burn treats it as compute-bound and keeps the output, as before.
struct RetroGroupNormRelu<B> {
    inputs: [NodeId; 3],
    options: GroupNormOptions,
    backend: PhantomData<B>,
}

impl<B> std::fmt::Debug for RetroGroupNormRelu<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetroGroupNormRelu")
            .field("inputs", &self.inputs)
            .field("options", &self.options)
            .finish()
    }
}

impl<B: BitOps> RetroForward for RetroGroupNormRelu<B> {
    fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
        let [x, gamma, beta] = self
            .inputs
            .map(|id| states.get_state::<FloatTensor<B>>(&id));
        let out = B::group_norm_relu(x, gamma, beta, self.options);
        states.save(out_node, out.output);
    }
}

impl<B: BitOps> Backward<B, 3> for GroupNormReluBackward {
    /// Inputs, and the group statistics of the forward (`[batch, groups]`, small).
    type State = (
        NodeId,
        NodeId,
        NodeId,
        FloatTensor<B>,
        FloatTensor<B>,
        GroupNormOptions,
    );

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, gamma_id, beta_id, mean, rstd, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_id);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_id);
        let beta = checkpointer.retrieve_node_output::<FloatTensor<B>>(beta_id);
        let d = B::group_norm_relu_backward(x, gamma, beta, mean, rstd, grad, options);
        for (node, grad) in [(node_x, d.x), (node_gamma, d.gamma), (node_beta, d.beta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: BitOps, C: CheckpointStrategy> BitOps for Autodiff<B, C> {
    fn std_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        match StdConv2dBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), options);
                let out = B::std_conv2d(x.into_primitive(), weight.into_primitive(), options);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::std_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }

    fn std_conv2d_add(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        match StdConv2dAddBackward
            .prepare::<C>([x.node(), weight.node(), residual.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), options);
                let out = B::std_conv2d_add(
                    x.into_primitive(),
                    weight.into_primitive(),
                    residual.into_primitive(),
                    options,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::std_conv2d_add(
                x.into_primitive(),
                weight.into_primitive(),
                residual.into_primitive(),
                options,
            )),
        }
    }

    fn std_conv2d_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        // A gradient of a gradient is not needed by BiT: computed, not tracked.
        Self::from_inner(B::std_conv2d_x_backward(
            x.into_primitive(),
            weight.into_primitive(),
            output_grad.into_primitive(),
            options,
        ))
    }

    fn std_conv2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::std_conv2d_weight_backward(
            x.into_primitive(),
            weight.into_primitive(),
            output_grad.into_primitive(),
            options,
        ))
    }

    fn zero_pad_max_pool2d(x: FloatTensor<Self>, options: PoolOptions) -> FloatTensor<Self> {
        match ZeroPadMaxPool2dBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), options);
                prep.finish(state, B::zero_pad_max_pool2d(x.into_primitive(), options))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::zero_pad_max_pool2d(x.into_primitive(), options))
            }
        }
    }

    fn zero_pad_max_pool2d_backward(
        x: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: PoolOptions,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::zero_pad_max_pool2d_backward(
            x.into_primitive(),
            output_grad.into_primitive(),
            options,
        ))
    }

    fn group_norm_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> GroupNormReluOutput<Self> {
        let retro = RetroGroupNormRelu::<B> {
            inputs: [x.id(), gamma.id(), beta.id()],
            options,
            backend: PhantomData,
        };
        let prep = GroupNormReluBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .memory_bound()
            .retro_forward(retro)
            .parents([&x, &gamma, &beta])
            .stateful();
        let (output, mean, rstd) = match prep {
            OpsKind::Tracked(mut prep) => {
                let ids = (
                    prep.checkpoint(&x),
                    prep.checkpoint(&gamma),
                    prep.checkpoint(&beta),
                );
                let out = B::group_norm_relu(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    options,
                );
                let state = (
                    ids.0,
                    ids.1,
                    ids.2,
                    out.mean.clone(),
                    out.rstd.clone(),
                    options,
                );
                (prep.finish(state, out.output), out.mean, out.rstd)
            }
            OpsKind::UnTracked(prep) => {
                let out = B::group_norm_relu(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    options,
                );
                (prep.finish(out.output), out.mean, out.rstd)
            }
        };
        GroupNormReluOutput {
            output,
            mean: Self::from_inner(mean),
            rstd: Self::from_inner(rstd),
        }
    }

    fn group_norm_relu_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> GroupNormReluGrads<Self> {
        let d = B::group_norm_relu_backward(
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            mean.into_primitive(),
            rstd.into_primitive(),
            output_grad.into_primitive(),
            options,
        );
        GroupNormReluGrads {
            x: Self::from_inner(d.x),
            gamma: Self::from_inner(d.gamma),
            beta: Self::from_inner(d.beta),
        }
    }
}
