with source as (

    select * from {{ source('raw', 'refunds') }}

),

renamed as (

    select
        refund_id,
        payment_id,
        order_id,
        {{ cents_to_dollars('amount_cents') }} as amount,
        reason as refund_reason,
        refunded_at,
        _loaded_at

    from source

)

select * from renamed
